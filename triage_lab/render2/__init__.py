"""A second, independent renderer of synthetic head studies that is used **only to test** the shipped models.

It shares nothing with the training generator (:mod:`triage_lab.synth`) except the two normal anatomies (the
invesalius head CT and the MNI152 maps): pose, deformation, lesion shapes, mimics, acquisition physics (CT projection
domain, MR k-space with coils), pixel storage and the DICOM writer are its own. It is never used to train a model or
to choose a threshold. See docs/render2.md.
"""
