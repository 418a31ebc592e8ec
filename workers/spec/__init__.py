"""What every layer agrees on: the model's tensor contract and classes, the Parquet schema, failure
reasons, the labelling policy and which model version is deployed."""
