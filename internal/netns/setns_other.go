//go:build !linux

package netns

import (
	"errors"
	"os"
)

const isLinux = false

var errNotLinux = errors.New("network namespaces need Linux")

func setnsSyscall() (uintptr, error)           { return 0, errNotLinux }
func inNetns(string, func() error) error       { return errNotLinux }
func openTap(string, string) (*os.File, error) { return nil, errNotLinux }
