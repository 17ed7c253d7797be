"""Images in and pictures out: preprocessing before coding (:mod:`.preprocess`, its dataset-wide rescale in
:mod:`.rescale`), the pictures drawn from the results and their PNG encoding (:mod:`.pictures`), and the quality of
reconstructions (:mod:`.metrics`)."""
