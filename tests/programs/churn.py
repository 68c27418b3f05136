# Memory that keeps changing while cr pre-copies it (tests/precopy.rs),
# checked page by page after a real checkpoint (and restore).
#
# A large private anonymous buffer whose pages each hold a pattern made of
# their index and a stamp (stamp 0 = a zero page); a moving window rewrites
# pages with new stamps, some with zeros, some are released with
# MADV_DONTNEED; small mappings come and go (mmap, munmap, mremap through
# mmap.resize). The program remembers every stamp, so after a restore it
# knows what each page must hold.
#
# It writes /root/ready once set up, then for N = 1, 2, ...: when /root/goN
# exists it stops changing memory, checks every page and writes PASS or
# FAIL: <what> to /root/resultN, then goes on churning.
import mmap, os, random, struct, sys

PAGE = 4096
N = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
rng = random.Random(7)


def pattern(i, stamp):
    if stamp == 0:
        return bytes(PAGE)
    return struct.pack("<QQ", i, stamp) * (PAGE // 16)


def anon(pages):
    return mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


big = anon(N)
stamps = [1] * N
for i in range(N):
    big[i * PAGE:(i + 1) * PAGE] = pattern(i, 1)

# Small mappings: [mmap, stamps of its pages, tag]; tag keeps patterns apart.
small = []
next_tag = 1_000_000


def new_small():
    global next_tag
    pages = rng.randint(1, 48)
    m = anon(pages)
    st = []
    for j in range(pages):
        s = rng.choice([0, next_tag + j])
        if s:
            m[j * PAGE:(j + 1) * PAGE] = pattern(j, s)
        st.append(s)
    next_tag += 1000
    small.append([m, st])


for _ in range(8):
    new_small()

resized = 0


def churn(t):
    global resized
    # The moving window: new stamps, every seventh page zeroed.
    base = (t * 211) % N
    for j in range(128):
        i = (base + j) % N
        s = 0 if (i + t) % 7 == 0 else t + 2
        big[i * PAGE:(i + 1) * PAGE] = pattern(i, s)
        stamps[i] = s
    if t % 5 == 0:
        # Released pages read back as zero.
        start = rng.randrange(N - 64)
        count = rng.randint(1, 64)
        big.madvise(mmap.MADV_DONTNEED, start * PAGE, count * PAGE)
        for i in range(start, start + count):
            stamps[i] = 0
    if t % 3 == 0:
        # munmap one, mmap another.
        victim = small.pop(rng.randrange(len(small)))
        victim[0].close()
        new_small()
    if t % 4 == 0:
        # mremap: grow (may move) or shrink; grown pages are zero.
        entry = small[rng.randrange(len(small))]
        m, st = entry
        pages = max(1, len(st) + rng.randint(-8, 24))
        m.resize(pages * PAGE)
        del st[pages:]
        st.extend([0] * (pages - len(st)))
        resized += 1


def check():
    bad = []
    for i in range(N):
        if big[i * PAGE:(i + 1) * PAGE] != pattern(i, stamps[i]):
            got = bytes(big[i * PAGE:i * PAGE + 16])
            bad.append(f"big page {i} (stamp {stamps[i]}) holds {got.hex()}")
    for k, (m, st) in enumerate(small):
        if len(m) != len(st) * PAGE:
            bad.append(f"mapping {k}: {len(m)} bytes, want {len(st) * PAGE}")
            continue
        for j, s in enumerate(st):
            if m[j * PAGE:(j + 1) * PAGE] != pattern(j, s):
                got = bytes(m[j * PAGE:j * PAGE + 16])
                bad.append(f"mapping {k} page {j} (stamp {s}) holds {got.hex()}")
    if resized == 0:
        bad.append("no mapping was ever resized")
    if not bad:
        return "PASS"
    return f"FAIL: {len(bad)} bad pages, first: " + "; ".join(bad[:5])


open("/root/ready", "w").write("1")
gen = 1
t = 0
while True:
    if os.path.exists(f"/root/go{gen}"):
        open(f"/root/result{gen}", "w").write(check())
        gen += 1
    t += 1
    churn(t)
