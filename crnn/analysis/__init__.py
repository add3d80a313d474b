"""Analysis tools beyond accuracy: effective receptive fields (:mod:`crnn.analysis.receptive_field`)."""
