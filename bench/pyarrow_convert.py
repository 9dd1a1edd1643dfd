"""Reference for the convert benchmark: pyarrow reads the CSV and writes zstd Parquet.

Usage: pyarrow_convert.py SRC DST [--no-header]. Writes with zstd level 3, the codec and level
flowsynth writes, so both compress the same way. Prints the seconds of read + write (interpreter
start-up and imports excluded; the benchmark times the whole process separately)."""
import sys
import time

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

src, dst = sys.argv[1], sys.argv[2]
header = "--no-header" not in sys.argv[3:]
t0 = time.perf_counter()
read = pacsv.ReadOptions(autogenerate_column_names=not header)
table = pacsv.read_csv(src, read_options=read)
pq.write_table(table, dst, compression="zstd", compression_level=3)
print(f"{time.perf_counter() - t0:.3f}")
