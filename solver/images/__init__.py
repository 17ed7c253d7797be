"""Images in and pictures out: preprocessing before coding (:mod:`.preprocess`) and the arrays drawn from the
results (:mod:`.pictures`: filter montages, images beside their reconstructions)."""
