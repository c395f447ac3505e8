"""The keras task: fine-tune an exported Keras classifier on image-classification records."""
