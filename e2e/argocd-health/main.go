// argocd-health runs girder's Argo CD health checks (charts/girder/argocd)
// the way Argo CD runs a health script from argocd-cm: in gopher-lua (the
// interpreter Argo CD embeds, at the version Argo CD v3.6 pins) with only the
// base, table and package libraries open, the object as the global `obj`
// (maps as tables, lists as 1-based tables, numbers as Lua numbers), a
// one-second limit, and the returned table read as {status, message}, an
// unknown status becoming Unknown.
//
//	argocd-health test DIR        every <group>/<kind>/health_test.yaml below DIR
//	argocd-health configmap DIR   the argocd-cm data entries for every script
//
// The test files follow Argo CD's own layout (resource_customizations):
// tests: [{inputPath: testdata/x.yaml, healthStatus: {status, message}}].
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"gopkg.in/yaml.v3"
)

type healthStatus struct {
	Status  string `yaml:"status"`
	Message string `yaml:"message"`
}

type testFile struct {
	Tests []struct {
		InputPath    string       `yaml:"inputPath"`
		HealthStatus healthStatus `yaml:"healthStatus"`
	} `yaml:"tests"`
}

var known = map[string]bool{"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true}

// toLua gives a decoded YAML/JSON value to Lua as Argo CD does.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case int:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case time.Time:
		// Argo CD gets objects as JSON, where times are strings.
		return lua.LString(v.UTC().Format(time.RFC3339))
	case []interface{}:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]interface{}:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetH(lua.LString(key), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// run evaluates script on obj and returns the health it gives.
func run(script string, obj map[string]interface{}) (healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return healthStatus{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return healthStatus{}, err
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return healthStatus{}, fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	out := healthStatus{}
	if s, ok := table.RawGetString("status").(lua.LString); ok {
		out.Status = string(s)
	}
	if m, ok := table.RawGetString("message").(lua.LString); ok {
		out.Message = string(m)
	}
	if !known[out.Status] {
		return healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return out, nil
}

func readYAML(path string, into interface{}) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(data, into)
}

// scripts finds every <group>/<kind>/health.lua below dir.
func scripts(dir string) ([]string, error) {
	var found []string
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && info.Name() == "testdata" {
			return filepath.SkipDir
		}
		if err == nil && info.Name() == "health.lua" {
			found = append(found, path)
		}
		return err
	})
	sort.Strings(found)
	return found, err
}

func test(dir string) int {
	all, err := scripts(dir)
	if err != nil || len(all) == 0 {
		fmt.Fprintf(os.Stderr, "no health.lua below %s: %v\n", dir, err)
		return 1
	}
	failed, passed := 0, 0
	for _, script := range all {
		kindDir := filepath.Dir(script)
		code, err := os.ReadFile(script)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var tests testFile
		if err := readYAML(filepath.Join(kindDir, "health_test.yaml"), &tests); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", kindDir, err)
			return 1
		}
		used := map[string]bool{}
		for _, t := range tests.Tests {
			used[filepath.Clean(t.InputPath)] = true
			var obj map[string]interface{}
			if err := readYAML(filepath.Join(kindDir, t.InputPath), &obj); err != nil {
				fmt.Printf("FAIL %s %s: %v\n", kindDir, t.InputPath, err)
				failed++
				continue
			}
			got, err := run(string(code), obj)
			switch {
			case err != nil:
				fmt.Printf("FAIL %s %s: %v\n", kindDir, t.InputPath, err)
				failed++
			case got != t.HealthStatus:
				fmt.Printf("FAIL %s %s: got %s %q, want %s %q\n", kindDir, t.InputPath, got.Status, got.Message, t.HealthStatus.Status, t.HealthStatus.Message)
				failed++
			default:
				fmt.Printf("ok   %s %s: %s\n", filepath.Base(kindDir), t.InputPath, got.Status)
				passed++
			}
		}
		fixtures, _ := filepath.Glob(filepath.Join(kindDir, "testdata", "*.yaml"))
		for _, f := range fixtures {
			rel, _ := filepath.Rel(kindDir, f)
			if !used[rel] {
				fmt.Printf("FAIL %s: %s is in no test of health_test.yaml\n", kindDir, rel)
				failed++
			}
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

func configmap(dir string) int {
	all, err := scripts(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("# girder's health checks for Argo CD, generated from the health.lua files beside")
	fmt.Println("# this one (e2e/argocd-health.sh configmap). Merge it into Argo CD's argocd-cm:")
	fmt.Println("#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd-cm.yaml")
	fmt.Println("data:")
	for _, script := range all {
		rel, _ := filepath.Rel(dir, filepath.Dir(script))
		group, kind := filepath.Dir(rel), filepath.Base(rel)
		code, err := os.ReadFile(script)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("  resource.customizations.health.%s_%s: |\n", group, kind)
		for _, line := range strings.Split(strings.TrimRight(string(code), "\n"), "\n") {
			if line == "" {
				fmt.Println()
			} else {
				fmt.Println("    " + line)
			}
		}
	}
	return 0
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health test|configmap DIR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "test":
		os.Exit(test(os.Args[2]))
	case "configmap":
		os.Exit(configmap(os.Args[2]))
	}
	fmt.Fprintln(os.Stderr, "usage: argocd-health test|configmap DIR")
	os.Exit(2)
}
