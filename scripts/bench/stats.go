package main

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Sample is a set of measurements of one figure.
type Sample []float64

// Median is the 50th percentile.
func (s Sample) Median() float64 { return s.Quantile(0.5) }

// P99 is the 99th percentile.
func (s Sample) P99() float64 { return s.Quantile(0.99) }

// Quantile returns the q-quantile (nearest rank), NaN for an empty sample.
func (s Sample) Quantile(q float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	c := append(Sample(nil), s...)
	sort.Float64s(c)
	i := int(math.Ceil(q*float64(len(c)))) - 1
	if i < 0 {
		i = 0
	}
	return c[i]
}

// Mean is the arithmetic mean, NaN for an empty sample.
func (s Sample) Mean() float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	return sum / float64(len(s))
}

// Spread is (max-min)/median: how much the runs disagree.
func (s Sample) Spread() float64 {
	if len(s) < 2 {
		return 0
	}
	c := append(Sample(nil), s...)
	sort.Float64s(c)
	m := s.Median()
	if m == 0 {
		return 0
	}
	return (c[len(c)-1] - c[0]) / m
}

// Summary is what the JSON report holds for a Sample.
type Summary struct {
	N      int       `json:"n"`
	Median float64   `json:"median"`
	P99    float64   `json:"p99"`
	Spread float64   `json:"spread"`
	Values []float64 `json:"values"`
}

// Summarize condenses s for the JSON report.
func (s Sample) Summarize() Summary {
	return Summary{N: len(s), Median: s.Median(), P99: s.P99(), Spread: s.Spread(), Values: s}
}

// Millis converts durations into a Sample in milliseconds.
func Millis(ds []time.Duration) Sample {
	out := make(Sample, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}

// Ratio formats a/b as "0.93x", or "-" when b is zero or either is NaN.
func Ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// Better names the better of two values for a verdict line.
func Better(nameA string, a float64, nameB string, b float64, higherIsBetter bool) string {
	if math.IsNaN(a) || math.IsNaN(b) {
		return "no comparison (missing figure)"
	}
	if (a > b) == higherIsBetter {
		return nameA
	}
	return nameB
}
