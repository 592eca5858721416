// Package e2e holds drawbridge's end-to-end tests: the drawbridge binary,
// built once with the race detector (TestMain), run as real agent, CLI and
// sidecar processes against real HAProxy — on loopback, in network
// namespaces for partitions, link loss and the floating IP (root), and
// under leader kills checked for linearizability (porcupine).
//
// Unit and in-process tests live beside the code they test; a new
// end-to-end test goes here, on the harness in harness_test.go
// (startDevAgent, startLocalCluster, nsStartLab, fipStartLab). They are
// the slow tier: `make test-short` skips them.
package e2e
