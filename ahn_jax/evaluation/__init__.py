"""Long-context evaluation: benchmark tasks and their metrics, passkey, perplexity, reports."""
