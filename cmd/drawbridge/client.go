package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
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

// apiClient is a small client of the agent's REST API.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// apiError is a non-2xx answer from the agent.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }

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
	base := strings.TrimRight(f.addr, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "http://" + base
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if f.caFile != "" || f.insecure {
		tc := &tls.Config{InsecureSkipVerify: f.insecure} //nolint:gosec // operator's explicit choice
		if f.caFile != "" {
			pem, err := os.ReadFile(f.caFile)
			if err != nil {
				return nil, fmt.Errorf("read CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no certificates in %s", f.caFile)
			}
			tc.RootCAs = pool
		}
		tr.TLSClientConfig = tc
	}
	return &apiClient{base: base, token: token, http: &http.Client{Timeout: f.timeout, Transport: tr}}, nil
}

// do sends a request with a JSON body (when in != nil) and decodes a JSON
// answer into out (when out != nil).
func (c *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &apiError{Status: resp.StatusCode, Message: msg}
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
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
