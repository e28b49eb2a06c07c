"""Pure functions: coordinates, grids and point maps of each transform family."""
