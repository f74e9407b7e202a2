"""Training data sources: Fashion-MNIST IDX files, an image folder, an S3 prefix."""
