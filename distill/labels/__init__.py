"""Label math (DESIGN.md §4): teacher outputs → training targets. Pure numpy, no Ray, no torch.

Modules by topic: `depth` (16-bit encoding), `normals` (Sobel), `groups` (133 categories → 11
groups), `text` (polygon masks), `tokens` (stop words, vocabulary, GloVe targets), `glove`
(vector files), `keypoints` (joint heatmaps, limb PAFs), `letterbox` (geometry).
"""
