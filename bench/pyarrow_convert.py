"""Reference for the convert benchmark: pyarrow reads the CSV and writes zstd Parquet.

Prints the wall-clock seconds of read + write (interpreter start-up excluded)."""
import sys
import time

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
table = pacsv.read_csv(src)
pq.write_table(table, dst, compression="zstd")
print(f"{time.perf_counter() - t0:.3f}")
