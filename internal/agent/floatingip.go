package agent

import (
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/cluster/floatingip"
)

// newFloatingIPOwner builds the provider and owner loop for an edge node
// whose config manages a floating IP; nil when it does not.
func newFloatingIPOwner(cfg *Config, info *nodeInfo, members *cluster.Membership, logger *slog.Logger, reg prometheus.Registerer) (*floatingip.Owner, error) {
	f := cfg.FloatingIP
	if cfg.Role != roleEdge || f.Provider == "" || f.Provider == floatingip.ProviderNone {
		return nil, nil
	}
	prov, err := floatingip.New(floatingip.Config{
		Provider:    f.Provider,
		Address:     f.Address,
		NodeName:    cfg.NodeName,
		Interface:   f.Interface,
		PrefixLen:   f.PrefixLen,
		ExecCommand: f.Exec.Command,
		ExecTimeout: f.Exec.Timeout,
		ExecRetries: f.Exec.Retries,
		DOTokenFile: f.DigitalOcean.TokenFile,
		DOToken:     os.Getenv("DIGITALOCEAN_TOKEN"),
		DODropletID: f.DigitalOcean.DropletID,
		DOAPIURL:    f.DigitalOcean.APIURL,
		Logger:      logger,
	})
	if err != nil {
		return nil, err
	}
	return floatingip.NewOwner(floatingip.OwnerConfig{
		NodeName: cfg.NodeName,
		Address:  f.Address,
		Priority: f.Priority,
		HoldDown: f.HoldDown,
	}, prov, cluster.NewFloatingIPView(cfg.NodeName, members, info.cluster.Voters), info.eligible, members.Refresh, logger, reg), nil
}

// floatingIPStatus reports who holds the address: the alive holder with the
// newest claim, as gossip (and this node) see it.
func (s *nodeInfo) floatingIPStatus(members []cluster.Member) *api.FloatingIPStatus {
	f := s.cfg.FloatingIP
	if f.Provider == "" || f.Provider == floatingip.ProviderNone {
		return nil
	}
	st := &api.FloatingIPStatus{Address: f.Address, Provider: f.Provider}
	var best *cluster.FIPMeta
	for _, m := range members {
		fm := m.Meta.FIP
		if fm == nil || !fm.Holding || m.Status != cluster.StatusAlive {
			continue
		}
		if best == nil || fm.Epoch > best.Epoch {
			best, st.Holder = fm, m.Name
		}
	}
	if best != nil && best.LastAt != 0 {
		st.LastFailover = &api.Failover{At: time.UnixMilli(best.LastAt), From: best.LastFrom, To: st.Holder,
			Duration: time.Duration(best.LastMS) * time.Millisecond, Reason: best.LastWhy}
	}
	return st
}
