"""Training entry points for the models this project trains itself (no Streamlit, no DB).

- `segmentation.train(...)`: smp U-Net anatomy model on an images folder + label-map folder (JSRT/SCR style).
- `classification.train(...)`: multi-label classifier on an images folder + NIH-style labels CSV.
Both write a model version folder `<out>/<model_id>/<version>/` (weights + model.json) that the registry lists.
"""
