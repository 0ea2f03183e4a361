"""Model families from outside the project that plug into the one Pipeline and the one decode: each gives a
tokenizer, a token transformer, a text (or class) conditioning and a sampler preset in the Pipeline's interface."""
