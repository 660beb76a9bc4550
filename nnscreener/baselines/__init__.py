"""Baselines from the paper's Table 2, trained and scored like Screener (``nnScreener_train DATASET baseline_*``,
``nnScreener_predict --method baseline_*``): a convolutional autoencoder and a MOOD-Top1-style blend regressor."""
