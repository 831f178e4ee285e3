"""diffmem's tests; each folder mirrors a package of src/diffmem."""
