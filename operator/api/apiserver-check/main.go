// Command apiserver-check validates the RolloutPolicy CRD and the example policies with the
// Kubernetes apiserver's own validation code (k8s.io/apiextensions-apiserver), without a cluster.
//
// It checks what `kubectl apply` would: the CRD must pass the apiserver's CRD validation
// (structural schema, CEL compilation and the CEL cost budget), every example without an
// `# expect:` line must be accepted, and every example with `# expect: <text>` must be rejected
// with an error containing <text>. The e2e suite asserts the same against a real apiserver.
//
// Usage: go run . CRD.yaml EXAMPLE.yaml...
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	structuralpruning "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: apiserver-check CRD.yaml [EXAMPLE.yaml...]")
		os.Exit(2)
	}
	failed := false
	fail := func(format string, args ...any) {
		failed = true
		fmt.Printf("FAIL "+format+"\n", args...)
	}

	crd, err := loadCRD(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx := context.Background()
	if errs := validation.ValidateCustomResourceDefinition(ctx, crd); len(errs) > 0 {
		fail("%s: the apiserver would reject the CRD: %v", os.Args[1], errs.ToAggregate())
	} else {
		fmt.Printf("ok   %s: accepted (structural, CEL compiles, within the cost budget)\n", os.Args[1])
	}
	// The internal version hoists a schema shared by all versions to spec.validation.
	validationSpec := crd.Spec.Validation
	if validationSpec == nil && len(crd.Spec.Versions) == 1 {
		validationSpec = crd.Spec.Versions[0].Schema
	}
	if validationSpec == nil || validationSpec.OpenAPIV3Schema == nil {
		fmt.Fprintln(os.Stderr, "expected one schema")
		os.Exit(1)
	}
	props := validationSpec.OpenAPIV3Schema
	structural, err := structuralschema.NewStructural(props)
	if err != nil {
		fmt.Fprintln(os.Stderr, "structural schema:", err)
		os.Exit(1)
	}
	validator, _, err := apiservervalidation.NewSchemaValidator(props)
	if err != nil {
		fmt.Fprintln(os.Stderr, "schema validator:", err)
		os.Exit(1)
	}
	celValidator := cel.NewValidator(structural, true, celconfig.PerCallLimit)

	for _, path := range os.Args[2:] {
		expect, obj, err := loadExample(path)
		if err != nil {
			fail("%s: %v", path, err)
			continue
		}
		errs := validate(ctx, obj, structural, validator, celValidator)
		message := ""
		if len(errs) > 0 {
			message = errs.ToAggregate().Error()
		}
		switch {
		case expect == "" && message == "":
			fmt.Printf("ok   %s: accepted\n", path)
		case expect == "":
			fail("%s: expected to be accepted, rejected: %s", path, message)
		case message == "":
			fail("%s: expected rejection with %q, accepted", path, expect)
		case !strings.Contains(message, expect):
			fail("%s: expected %q in the error, got: %s", path, expect, message)
		default:
			fmt.Printf("ok   %s: rejected: %s\n", path, message)
		}
	}
	if failed {
		os.Exit(1)
	}
}

// validate mirrors the apiserver's create path for a custom resource: prune unknown fields,
// apply defaults, OpenAPI validation, list-map invariants, then CEL rules unless a blocking
// error was found (see k8s.io/apiextensions-apiserver/pkg/registry/customresource/strategy.go).
func validate(ctx context.Context, obj map[string]any, s *structuralschema.Structural,
	validator apiservervalidation.SchemaValidator, celValidator *cel.Validator) field.ErrorList {
	structuralpruning.Prune(obj, s, true)
	structuraldefaulting.Default(obj, s)
	errs := apiservervalidation.ValidateCustomResource(nil, obj, validator)
	errs = append(errs, listtype.ValidateListSetsAndMaps(nil, s, obj)...)
	for _, err := range errs {
		switch err.Type {
		case field.ErrorTypeNotSupported, field.ErrorTypeRequired, field.ErrorTypeTooLong,
			field.ErrorTypeTooMany, field.ErrorTypeTypeInvalid:
			return errs
		}
	}
	celErrs, _ := celValidator.Validate(ctx, nil, s, obj, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

func loadCRD(path string) (*apiextensions.CustomResourceDefinition, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v1 := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(data, v1); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(v1)
	crd := &apiextensions.CustomResourceDefinition{}
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(v1, crd, nil); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return crd, nil
}

// loadExample returns the text after a first-line `# expect:` comment (empty if none) and the
// object.
func loadExample(path string) (string, map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	expect := ""
	first, _, _ := bufio.NewReader(strings.NewReader(string(data))).ReadLine()
	if rest, ok := strings.CutPrefix(string(first), "# expect:"); ok {
		expect = strings.TrimSpace(rest)
	}
	// Decode like the apiserver: integers stay int64 (sigs.k8s.io/yaml alone yields float64).
	jsonData, err := yaml.YAMLToJSON(data)
	if err != nil {
		return "", nil, err
	}
	obj := map[string]any{}
	if err := utiljson.Unmarshal(jsonData, &obj); err != nil {
		return "", nil, err
	}
	return expect, obj, nil
}
