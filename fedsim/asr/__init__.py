"""Speech recognition: offline corpus, word pieces, LAS model, WER."""
