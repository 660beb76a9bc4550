"""Reading medical images: file types, NIfTI / NRRD / MHA images, DICOM CT series, and Hounsfield-unit conversion.

Used by the dataset converters and, for user input, by prediction.
"""
