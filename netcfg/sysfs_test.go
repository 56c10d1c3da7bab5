package netcfg

import "testing"

func TestCPUListMask(t *testing.T) {
	for _, tc := range []struct{ list, want string }{
		{"0", "1"},
		{"0-1", "3"},
		{"0-3,8", "10f"},
		{"0-31", "ffffffff"},
		{"0-3,32", "1,0000000f"},
		{"0-63", "ffffffff,ffffffff"},
	} {
		if got, err := cpuListMask(tc.list); err != nil || got != tc.want {
			t.Errorf("cpuListMask(%q) = %q, %v; want %q", tc.list, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "a", "3-1", "0-"} {
		if got, err := cpuListMask(bad); err == nil {
			t.Errorf("cpuListMask(%q) = %q, want an error", bad, got)
		}
	}
}
