package main

import "errors"

// Placeholders until the control-plane benchmarks land.
func convergence(Options) (Section, error)    { return Section{}, errors.New("not written yet") }
func busScale(Options) (Section, error)       { return Section{}, errors.New("not written yet") }
func reconcileScale(Options) (Section, error) { return Section{}, errors.New("not written yet") }
