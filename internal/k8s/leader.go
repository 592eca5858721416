package k8s

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// ErrLostLeadership is returned by RunWithLeaderElection when another
// replica took the Lease: the process should exit and start again as a
// follower, so that two replicas never reconcile at once.
var ErrLostLeadership = errors.New("lost the leader lease")

// LeaderConfig is how replicas elect the one that reconciles.
type LeaderConfig struct {
	// Namespace and Name locate the Lease.
	Namespace string
	Name      string
	// Identity names this replica in the Lease (the pod name).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's
	// leader-election timings (defaults 15s, 10s, 2s).
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// RunWithLeaderElection runs the controller while this replica holds the
// Lease. It returns nil when ctx ends (releasing the Lease, so a standby
// takes over at once) and ErrLostLeadership when the Lease was lost.
func (c *Controller) RunWithLeaderElection(ctx context.Context, lc LeaderConfig) error {
	if lc.Namespace == "" || lc.Name == "" || lc.Identity == "" {
		return errors.New("leader election needs a Lease namespace, name and identity")
	}
	if lc.LeaseDuration == 0 {
		lc.LeaseDuration = 15 * time.Second
	}
	if lc.RenewDeadline == 0 {
		lc.RenewDeadline = 10 * time.Second
	}
	if lc.RetryPeriod == 0 {
		lc.RetryPeriod = 2 * time.Second
	}
	leadCtx := make(chan context.Context, 1)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: lc.Namespace, Name: lc.Name},
		Client:     c.kube.Coordination,
		LockConfig: resourcelock.ResourceLockConfig{Identity: lc.Identity},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   lc.LeaseDuration,
		RenewDeadline:   lc.RenewDeadline,
		RetryPeriod:     lc.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            lc.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			// Called on a goroutine of its own, which le.Run does not
			// wait for: hand the context over and run here instead.
			OnStartedLeading: func(ctx context.Context) { leadCtx <- ctx },
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != lc.Identity {
					c.log.Info("following", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	electCtx, stopElecting := context.WithCancel(ctx)
	defer stopElecting()
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		le.Run(electCtx)
	}()
	select {
	case runCtx := <-leadCtx:
		c.log.Info("leading", "lease", lc.Namespace+"/"+lc.Name, "identity", lc.Identity)
		err := c.Run(runCtx)
		// Run returns when the Lease is lost or ctx ends, or early on an
		// error: then stop renewing (and release) before returning.
		stopElecting()
		<-elected
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
	case <-elected:
		if ctx.Err() != nil {
			return nil
		}
	}
	return ErrLostLeadership
}
