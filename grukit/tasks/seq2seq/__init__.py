"""The seq2seq task: strings to strings (character level) with a GRU encoder-decoder and attention."""
