"""From images to text: line segmentation, page transcription."""
