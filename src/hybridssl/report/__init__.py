"""Pictures and pages: reconstructions, embeddings, curves, the HTML report."""
