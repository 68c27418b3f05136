# A writable MAP_SHARED file mapping with data written through it and never
# synced: the data lives in the file, which the image archives.
with open("/root/shared_rw", "wb") as f:
    f.write(b"." * 8192)
fd = os.open("/root/shared_rw", os.O_RDWR)
m = mmap.mmap(fd, 8192, flags=mmap.MAP_SHARED)
os.close(fd)
m[100:110] = b"dirty data"
m[5000:5004] = b"page"
ready()
wait_go()
check("mapping", bytes(m[100:110]), b"dirty data")
check("mapping page 1", bytes(m[5000:5004]), b"page")
data = open("/root/shared_rw", "rb").read()
check("file", data[100:110], b"dirty data")
check("file page 1", data[5000:5004], b"page")
check("maps", [l.split()[1] for l in maps_lines("/root/shared_rw")], ["rw-s"])
m[200:205] = b"after"
check("write after restore reaches the file", open("/root/shared_rw", "rb").read()[200:205], b"after")
result()
forever()
