"""The detection task: OD-API records, a detector family, COCO evaluation and the export."""
