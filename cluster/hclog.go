package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// newHCLogger returns an hclog.Logger (what raft speaks) that forwards every
// line to slog with its level and fields intact, so drawbridge has one log
// stream. hclog writes one JSON object per line to slogWriter.
func newHCLogger(name string, logger *slog.Logger) hclog.Logger {
	level := hclog.Info
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      level,
		JSONFormat: true,
		Output:     &slogWriter{logger: logger},
	})
}

type slogWriter struct{ logger *slog.Logger }

var _ io.Writer = (*slogWriter)(nil)

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var m map[string]any
		if len(line) == 0 {
			continue
		}
		if err := json.Unmarshal(line, &m); err != nil {
			w.logger.Info(string(line))
			continue
		}
		msg, _ := m["@message"].(string)
		lvl := slog.LevelInfo
		switch s, _ := m["@level"].(string); s {
		case "trace", "debug":
			lvl = slog.LevelDebug
		case "warn":
			lvl = slog.LevelWarn
		case "error":
			lvl = slog.LevelError
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			if !strings.HasPrefix(k, "@") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		args := make([]any, 0, 2*len(keys))
		for _, k := range keys {
			args = append(args, k, m[k])
		}
		w.logger.Log(context.Background(), lvl, msg, args...)
	}
	return len(p), nil
}
