package fsm

import (
	"errors"
	"reflect"
	"testing"
)

func TestParsePortRanges(t *testing.T) {
	tests := []struct {
		name  string
		specs []string
		want  PortRanges
		str   string
		err   bool
	}{
		{"empty", nil, nil, "", false},
		{"blank items skipped", []string{"", " , "}, nil, "", false},
		{"single", []string{"9000"}, PortRanges{{9000, 9000}}, "9000", false},
		{"range", []string{"10000-10100"}, PortRanges{{10000, 10100}}, "10000-10100", false},
		{"sorted", []string{"10000-10100", "9000"}, PortRanges{{9000, 9000}, {10000, 10100}}, "9000,10000-10100", false},
		{"adjacent merged", []string{"9000", "9001", "9002"}, PortRanges{{9000, 9002}}, "9000-9002", false},
		{"overlap merged", []string{"100-200", "150-300", "120"}, PortRanges{{100, 300}}, "100-300", false},
		{"contained merged", []string{"100-300", "150-160"}, PortRanges{{100, 300}}, "100-300", false},
		{"comma list and spaces", []string{" 9000 , 9100 - 9200 "}, PortRanges{{9000, 9000}, {9100, 9200}}, "9000,9100-9200", false},
		{"one-port range", []string{"80-80"}, PortRanges{{80, 80}}, "80", false},
		{"bounds", []string{"1", "65535"}, PortRanges{{1, 1}, {65535, 65535}}, "1,65535", false},
		{"zero", []string{"0"}, nil, "", true},
		{"too high", []string{"65536"}, nil, "", true},
		{"negative", []string{"-1"}, nil, "", true},
		{"plus sign", []string{"+80"}, nil, "", true},
		{"reversed", []string{"200-100"}, nil, "", true},
		{"open range", []string{"100-"}, nil, "", true},
		{"word", []string{"http"}, nil, "", true},
		{"long digits", []string{"0000080"}, nil, "", true},
		{"two dashes", []string{"1-2-3"}, nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePortRanges(tt.specs)
			if tt.err {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 0 || len(tt.want) != 0 {
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %v, want %v", got, tt.want)
				}
			}
			if got.String() != tt.str {
				t.Errorf("String() = %q, want %q", got.String(), tt.str)
			}
			back, err := ParsePortRanges([]string{got.String()})
			if err != nil || back.String() != tt.str {
				t.Errorf("String does not parse back: %v, %v", back, err)
			}
		})
	}
}

func TestPortRangesContainsAndCheckPort(t *testing.T) {
	reserved, err := ParsePortRanges([]string{"9000-9002", "22", "10000-10100"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		port     int
		contains bool
		err      string
	}{
		{21, false, ""},
		{22, true, "invalid: port 22 is reserved (reserved ports: 22,9000-9002,10000-10100)"},
		{23, false, ""},
		{8999, false, ""},
		{9000, true, "invalid: port 9000 is reserved (reserved ports: 22,9000-9002,10000-10100)"},
		{9001, true, "invalid: port 9001 is reserved (reserved ports: 22,9000-9002,10000-10100)"},
		{9002, true, "invalid: port 9002 is reserved (reserved ports: 22,9000-9002,10000-10100)"},
		{9003, false, ""},
		{10100, true, "invalid: port 10100 is reserved (reserved ports: 22,9000-9002,10000-10100)"},
		{10101, false, ""},
		{0, false, "invalid: port 0 out of range 1-65535"},
		{65536, false, "invalid: port 65536 out of range 1-65535"},
	}
	for _, tt := range tests {
		if got := reserved.Contains(tt.port); got != tt.contains {
			t.Errorf("Contains(%d) = %v, want %v", tt.port, got, tt.contains)
		}
		err := CheckPort(tt.port, reserved)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("CheckPort(%d) = %v, want nil", tt.port, err)
		case tt.err != "" && (err == nil || err.Error() != tt.err || !errors.Is(err, ErrInvalid)):
			t.Errorf("CheckPort(%d) = %v, want %q", tt.port, err, tt.err)
		}
	}
	if (PortRanges{}).Contains(80) || CheckPort(80, nil) != nil {
		t.Error("empty ranges must contain nothing")
	}
}
