"""Frozen-backbone probes of an export: features (backbone), heads (TextCNN, ridge, token
heads), task CSVs (tasks), scores and reports; the commands downstream and annotation."""
