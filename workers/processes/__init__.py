"""Child processes: the isolated decoder child with its limits, and the lifeline that ends what a
killed run started."""
