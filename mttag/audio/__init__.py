"""Audio in: finding the files, decoding them (libsndfile, ffmpeg for the rest), window plans,
the log-mel features, and the demo music. The first step of the tagging pipeline
(files -> audio -> windows -> model -> results)."""
