package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/api/client"
)

// clientFlags are shared by every command that talks to an agent's API.
type clientFlags struct {
	addr      string
	tokenFile string
	caFile    string
	insecure  bool
	timeout   time.Duration
	json      bool
}

func (f *clientFlags) register(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	def := os.Getenv("DRAWBRIDGE_ADDR")
	if def == "" {
		def = "http://127.0.0.1:9000"
	}
	p.StringVar(&f.addr, "addr", def, "agent API URL (env DRAWBRIDGE_ADDR)")
	p.StringVar(&f.tokenFile, "token-file", "", "file holding the API token (default: env DRAWBRIDGE_API_TOKEN)")
	p.StringVar(&f.caFile, "ca-file", "", "CA certificate to verify an HTTPS agent")
	p.BoolVar(&f.insecure, "insecure-skip-verify", false, "do not verify the agent's TLS certificate")
	p.DurationVar(&f.timeout, "timeout", 30*time.Second, "request timeout")
	p.BoolVar(&f.json, "json", false, "print JSON instead of tables")
}

// apiClient talks to the one agent --addr names.
type apiClient struct{ c *client.Client }

func (f *clientFlags) client() (*apiClient, error) {
	token := os.Getenv("DRAWBRIDGE_API_TOKEN")
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, &exitError{code: 2, err: errors.New("no API token: set DRAWBRIDGE_API_TOKEN or --token-file")}
	}
	c, err := client.New(client.Config{
		Members:            []string{f.addr},
		Token:              token,
		CAFile:             f.caFile,
		InsecureSkipVerify: f.insecure,
		Timeout:            f.timeout,
		UserAgent:          "drawbridge/" + version,
	})
	if err != nil {
		return nil, err
	}
	return &apiClient{c: c}, nil
}

// do sends a request with a JSON body (when in != nil) and decodes a JSON
// answer into out (when out != nil). Errors read "message (HTTP status)"
// for an answer, "METHOD path: cause" when the agent was not reached.
func (c *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	err := c.c.Do(ctx, method, path, in, out)
	var e *client.Error
	switch {
	case !errors.As(err, &e):
		return err
	case e.Status == 0:
		return fmt.Errorf("%s %s: %w", method, path, e.Err)
	}
	return fmt.Errorf("%s (HTTP %d)", e.Message, e.Status)
}

// call sends one request to the agent. With --json it prints the answer as
// it came and reports printed; otherwise it decodes the answer into out for
// the caller to show as a table.
func (f *clientFlags) call(cmd *cobra.Command, method, path string, in, out any) (printed bool, err error) {
	c, err := f.client()
	if err != nil {
		return false, err
	}
	var raw json.RawMessage
	if err := c.do(cmd.Context(), method, path, in, &raw); err != nil {
		return false, err
	}
	if f.json {
		return true, printJSON(cmd.OutOrStdout(), raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return false, fmt.Errorf("decode the answer to %s %s: %w", method, path, err)
		}
	}
	return false, nil
}

// printJSON pretty-prints raw JSON.
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}
