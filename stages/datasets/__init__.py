"""Dataset readers (ENVI ROI text, GeoTIFF/ENVI rasters, MATLAB files) and synthetic twins."""
