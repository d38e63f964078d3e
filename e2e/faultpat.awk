# faultpat.awk: the 128 KiB the storage fault scenario writes as chunk
# CHUNK of disk TAG: 256 lines of 511 characters and a newline, one per
# 512-byte sector, each naming the disk, the chunk and the sector, so that
# a chunk lost, misplaced or torn differs from its model in every sector
# concerned. The guest writes it; dom0 compares the disk with it.
#   awk -v tag=TAG -v chunk=CHUNK -f faultpat.awk
BEGIN {
	for (s = 0; s < 256; s++)
		printf "%-511.511s\n", "blkdom fault scenario " tag " chunk " chunk " sector " s
}
