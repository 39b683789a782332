"""Drawing results onto frames: skeletons, keypoints, segmentation overlays, track ids."""
