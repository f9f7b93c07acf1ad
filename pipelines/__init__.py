"""Ray stage graphs (DESIGN.md §1, §5): `generate_labels` and `train_student`, with the run
manifest, resume and atomic shard commit. The graphs arrive with their issues; the shard format
and its atomic writer live in `distill.shards`.
"""
