from setuptools import find_packages, setup

setup(
    name="nnscreener",
    version="0.1.0",
    description="Unsupervised pathology segmentation in 3D CT (Screener) as an extension of nnU-Net v2",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnscreener", "nnscreener.*", "dataset_conversion", "dataset_conversion.*"]),
    install_requires=[
        "torch>=2.1.2,!=2.9.*,<2.15",
        "nnunetv2>=2.6,<2.9",
        "dynamic-network-architectures>=0.4",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3",
        "acvl-utils>=0.2",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "scikit-image>=0.21",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pydicom>=2.4",
        "highdicom>=0.28",  # DICOM-SEG and parametric maps for DICOM inputs (nnscreener/findings/dicom_out.py)
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2"]},
    entry_points={
        "console_scripts": [
            "nnScreener_generate_synthetic=nnscreener.cli.generate_synthetic:main",
            "nnScreener_plan_and_preprocess=nnscreener.cli.plan_and_preprocess:main",
            "nnScreener_train=nnscreener.cli.train:main",
            "nnScreener_predict=nnscreener.cli.predict:main",
            "nnScreener_evaluate=nnscreener.cli.evaluate:main",
            "nnScreener_calibrate=nnscreener.cli.calibrate:main",
            "nnScreener_demo=nnscreener.cli.demo:main",
            "nnScreener_convert_nlst=dataset_conversion.convert_nlst:main",
            "nnScreener_convert_amos=dataset_conversion.convert_amos:main",
            "nnScreener_convert_abdomenatlas=dataset_conversion.convert_abdomenatlas:main",
            "nnScreener_convert_lidc=dataset_conversion.convert_lidc:main",
            "nnScreener_convert_midrc_ricord=dataset_conversion.convert_midrc_ricord:main",
            "nnScreener_convert_kits=dataset_conversion.convert_kits:main",
            "nnScreener_convert_lits=dataset_conversion.convert_lits:main",
        ]
    },
)
