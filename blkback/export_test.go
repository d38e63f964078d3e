package blkback

// KernelBackend lets tests stand in for /sys/module/xen_blkback.
var KernelBackend = &kernelBackend

// ParseProcStat is parseProcStat, for the table test.
var ParseProcStat = parseProcStat

// OwnKeys is ownKeys, for the test that every key the backend writes is
// in it.
var OwnKeys = ownKeys
