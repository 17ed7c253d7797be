"""Images in and pictures out: preprocessing before coding (:mod:`.preprocess`), the pictures drawn from the
results and their PNG encoding (:mod:`.pictures`), and the quality of reconstructions (:mod:`.metrics`)."""
