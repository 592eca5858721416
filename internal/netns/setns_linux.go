package netns

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

const isLinux = true

// setnsNumbers are the setns(2) system call numbers, which package syscall
// does not export for every architecture.
var setnsNumbers = map[string]uintptr{
	"amd64": 308, "arm64": 268, "riscv64": 268, "loong64": 268,
	"386": 346, "arm": 375, "ppc64le": 350, "ppc64": 350, "s390x": 339,
}

func setnsSyscall() (uintptr, error) {
	n, ok := setnsNumbers[runtime.GOARCH]
	if !ok {
		return 0, fmt.Errorf("setns: unknown system call number on %s", runtime.GOARCH)
	}
	return n, nil
}

// inNetns runs fn on a fresh OS thread that has joined the network namespace
// mounted at path, and waits for it.
//
// The goroutine locks its thread and never unlocks it: when a goroutine
// exits while locked, the Go runtime terminates the thread rather than
// returning it to the pool, so no other goroutine ever runs in the wrong
// namespace. Threads the runtime creates meanwhile come from its template
// thread, not from this one. fn must create its sockets synchronously and
// must not resolve names; sockets keep their namespace for their lifetime.
func inNetns(path string, fn func() error) error {
	nr, err := setnsSyscall()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		f, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("open namespace: %w", err)
			return
		}
		_, _, e := syscall.RawSyscall(nr, f.Fd(), syscall.CLONE_NEWNET, 0)
		f.Close()
		if e != 0 {
			errc <- fmt.Errorf("setns %s: %w", path, e)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// openTap creates a non-persistent TAP device named name in the namespace at
// nsPath and returns its file. The device disappears when the file is
// closed. The file is non-blocking, so reads go through the runtime poller
// and Close interrupts them.
func openTap(nsPath, name string) (*os.File, error) {
	var tap *os.File
	err := inNetns(nsPath, func() error {
		fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req struct {
			name  [16]byte
			flags uint16
			_     [22]byte
		}
		copy(req.name[:15], name)
		req.flags = syscall.IFF_TAP | syscall.IFF_NO_PI
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
			syscall.Close(fd)
			return fmt.Errorf("create tap %s: %w", name, e)
		}
		tap = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	})
	return tap, err
}
