package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The data directory belongs to one agent at a time. An agent takes an
// exclusive, non-blocking flock on DATA_DIR/agent.lock before it touches
// any other file there, and writes its PID into the lock file. A second
// agent on the same directory fails at once with the holder's PID (it used
// to write agent.pid over the first one's and then wait forever on the
// raft store's lock). The kernel drops the lock when the holder exits,
// however it exits, so the lock, not agent.pid, says whether an agent runs
// and which: `drawbridge leave` signals only the process holding it.

// LockFile is the data directory's lock.
func LockFile(dataDir string) string { return filepath.Join(dataDir, "agent.lock") }

// ErrDataDirLocked means another agent holds the data directory.
var ErrDataDirLocked = errors.New("data directory in use by another agent")

// dirLock is a held lock on a data directory.
type dirLock struct{ f *os.File }

// lockDataDir takes dataDir's lock and records this process's PID in it.
func lockDataDir(dataDir string) (*dirLock, error) {
	path := LockFile(dataDir)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if pid, ok := LockHolder(dataDir); ok {
				return nil, fmt.Errorf("%w: %s is held by agent PID %d (stop it with `drawbridge leave --data-dir %s`)", ErrDataDirLocked, path, pid, dataDir)
			}
			return nil, fmt.Errorf("%w: %s is locked", ErrDataDirLocked, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
	}
	return &dirLock{f: f}, nil
}

// release drops the lock. The PID stays in the file; with no lock held it
// names nobody.
func (l *dirLock) release() {
	if l != nil && l.f != nil {
		_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}

// LockHolder returns the PID of the agent that holds dataDir's lock now,
// and false when no agent holds it (none runs, or the last one exited or
// crashed: a PID left in a file then names nobody, or some other process).
func LockHolder(dataDir string) (int, bool) {
	path := LockFile(dataDir)
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return 0, false // nobody holds it
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	return pid, true
}
