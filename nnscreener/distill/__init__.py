"""Distillation of a trained Screener model into the UNet of an nnU-Net plans file (issue: fine-tuning with stock
``nnUNetv2_train -pretrained_weights``): the student and its plans (:mod:`~nnscreener.distill.student`), its input
preprocessed by nnU-Net (:mod:`~nnscreener.distill.preprocessing`), the teacher's targets on the student's grid
(:mod:`~nnscreener.distill.targets`), training batches (:mod:`~nnscreener.distill.loader`) and anomaly maps from
the student alone (:mod:`~nnscreener.distill.predict`). The trainer is :mod:`nnscreener.trainers.distill`.
"""
