package main

import "errors"

// Placeholders until each part lands in its own file.
func dataPlane(Options) (Section, error)      { return Section{}, errors.New("not written yet") }
func convergence(Options) (Section, error)    { return Section{}, errors.New("not written yet") }
func busScale(Options) (Section, error)       { return Section{}, errors.New("not written yet") }
func reconcileScale(Options) (Section, error) { return Section{}, errors.New("not written yet") }
