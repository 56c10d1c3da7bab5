module github.com/cframe/cframe

go 1.26.8
