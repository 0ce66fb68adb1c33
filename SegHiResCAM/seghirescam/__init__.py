"""SegHiResCAM: Seg-HiRes-Grad CAM and Seg-Grad CAM for segmentation U-Nets."""
