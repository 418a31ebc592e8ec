"""The Triton side: the server emoframe embeds and the model configuration it serves."""
