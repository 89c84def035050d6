"""What the data and model layers share: the prompt templates and image token, the label names and
split files, tokenizer loading, image decoding and the encoder's input tensor, and batch padding.
Both import it; it imports neither."""
