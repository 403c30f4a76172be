"""The bottom layer's data types, shared by every layer above."""
